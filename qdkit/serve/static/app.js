// The drawing page of `qdkit serve`. Strokes are recorded as pointer positions (CSS pixels) and sent
// as Quick Draw raw strokes [[xs, ys], ...]; the service simplifies and renders them exactly as the
// dataset's bitmaps were made, and returns the guesses and the 28x28 picture it classified.
"use strict";

const THROTTLE_MS = 100;  // at most one guess request per 100 ms while a stroke is being drawn
const GAME_SECONDS = 20;
const TOP_K = 5;

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const picture = document.getElementById("picture");
const guessList = document.getElementById("guesses");
const statusLine = document.getElementById("status");

// For tests and the curious: the last request's strokes and the stroke-end -> guess latencies (ms).
const state = {
  strokes: [], current: null, seq: 0, shownSeq: 0, lastMoveSend: 0, moveInFlight: false,
  classes: [], latencies: [], game: null,
};
window.qdkit = state;

// ---------------------------------------------------------------------------------- drawing

function resizePad() {
  const rect = pad.getBoundingClientRect();
  const ratio = window.devicePixelRatio || 1;
  pad.width = Math.round(rect.width * ratio);
  pad.height = Math.round(rect.height * ratio);
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  redraw();
}

function strokePath(stroke) {
  const [xs, ys] = stroke;
  ctx.beginPath();
  ctx.moveTo(xs[0], ys[0]);
  ctx.lineTo(xs[0] + 0.01, ys[0]);  // a single point still shows as a dot
  for (let i = 1; i < xs.length; i++) ctx.lineTo(xs[i], ys[i]);
  ctx.stroke();
}

function redraw() {
  ctx.save();
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, pad.width, pad.height);
  ctx.restore();
  ctx.lineWidth = 4;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.strokeStyle = "#1b1b1f";
  for (const s of state.strokes) strokePath(s);
  if (state.current) strokePath(state.current);
}

function pointOf(event, rect) {
  const round = (v) => Math.round(v * 100) / 100;
  return [round(event.clientX - rect.left), round(event.clientY - rect.top)];
}

function addPoints(event) {
  const rect = pad.getBoundingClientRect();
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  const [xs, ys] = state.current;
  for (const e of events.length ? events : [event]) {
    const [x, y] = pointOf(e, rect);
    if (xs.length && xs[xs.length - 1] === x && ys[ys.length - 1] === y) continue;
    xs.push(x);
    ys.push(y);
  }
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 && event.pointerType === "mouse") return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  state.current = [[], []];
  addPoints(event);
  redraw();
});

pad.addEventListener("pointermove", (event) => {
  if (!state.current) return;
  event.preventDefault();
  addPoints(event);
  redraw();
  const now = performance.now();
  if (now - state.lastMoveSend >= THROTTLE_MS && !state.moveInFlight) {
    state.lastMoveSend = now;
    state.moveInFlight = true;
    guess().finally(() => { state.moveInFlight = false; });
  }
});

function endStroke(event) {
  if (!state.current) return;
  if (event.type === "pointerup") addPoints(event);
  state.strokes.push(state.current);
  state.current = null;
  redraw();
  guess(event.timeStamp);  // the latency counts from the pointer event itself
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

// ---------------------------------------------------------------------------------- guessing

// strokeEndAt: the time of the pointerup that ended a stroke (its latency is recorded), or null.
async function guess(strokeEndAt = null) {
  const drawing = state.current ? [...state.strokes, state.current] : state.strokes.slice();
  if (!drawing.length) return;
  const seq = ++state.seq;
  const body = JSON.stringify({ drawing });
  let data;
  try {
    const response = await fetch(`predict?top_k=${TOP_K}&bitmap=true`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body,
    });
    data = await response.json();
    if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  } catch (error) {
    if (seq > state.shownSeq) showStatus(`the service said: ${error.message}`, true);
    return;
  }
  if (seq < state.shownSeq) return;  // an older request answered late: a newer guess is on screen
  state.shownSeq = seq;
  showGuesses(data.top, seq);
  showPicture(data.bitmap, body);
  showStatus("");
  checkGame(data.top[0].class);
  if (strokeEndAt !== null) {
    // "on screen": measured when the browser is about to paint the updated page
    requestAnimationFrame(() => { state.latencies.push(performance.now() - strokeEndAt); });
  }
}

function showGuesses(top, seq) {
  guessList.replaceChildren(...top.map(({ class: name, probability }) => {
    const li = document.createElement("li");
    li.dataset.class = name;
    li.dataset.probability = String(probability);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(100 * probability).toFixed(1)}%`;
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${(100 * probability).toFixed(1)}%`;
    li.append(bar, label, pct);
    return li;
  }));
  guessList.dataset.seq = String(seq);
}

function showPicture(bitmap, body) {
  const pctx = picture.getContext("2d");
  const image = pctx.createImageData(28, 28);
  const flat = bitmap.flat();
  for (let i = 0; i < flat.length; i++) {
    const v = 255 - flat[i];  // shown as dark ink on white
    image.data.set([v, v, v, 255], 4 * i);
  }
  pctx.putImageData(image, 0, 0);
  picture.dataset.bitmap = flat.join(",");
  picture.dataset.drawing = body;
}

function showStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function clearAll() {
  state.strokes = [];
  state.current = null;
  state.shownSeq = ++state.seq;  // answers still on their way are dropped
  guessList.replaceChildren();
  guessList.dataset.seq = "0";
  picture.getContext("2d").clearRect(0, 0, 28, 28);
  picture.dataset.bitmap = "";
  picture.dataset.drawing = "";
  redraw();
}

document.getElementById("clear").addEventListener("click", clearAll);
document.getElementById("undo").addEventListener("click", () => {
  state.strokes.pop();
  if (!state.strokes.length) { clearAll(); return; }
  redraw();
  guess();
});

// ---------------------------------------------------------------------------------- game

const gameBox = document.getElementById("game");
const gamePrompt = document.getElementById("game-prompt");
const gameClock = document.getElementById("game-clock");

function startGame() {
  if (!state.classes.length) return;
  stopGame();
  clearAll();
  const target = state.classes[Math.floor(Math.random() * state.classes.length)];
  state.game = { target, ends: performance.now() + GAME_SECONDS * 1000, timer: null, over: false };
  gameBox.hidden = false;
  gameBox.className = "game";
  gameBox.dataset.target = target;
  gameBox.dataset.result = "";
  gamePrompt.textContent = `Draw: ${target}`;
  tick();
  state.game.timer = setInterval(tick, 200);
  document.getElementById("play").textContent = "New word";
}

function tick() {
  const game = state.game;
  if (!game || game.over) return;
  const left = Math.max(0, (game.ends - performance.now()) / 1000);
  gameClock.textContent = `${left.toFixed(0)} s`;
  if (left <= 0) endGame(false);
}

function endGame(won) {
  const game = state.game;
  game.over = true;
  clearInterval(game.timer);
  gameBox.className = won ? "game won" : "game lost";
  gameBox.dataset.result = won ? "won" : "lost";
  const top = guessList.firstElementChild;
  gamePrompt.textContent = won ? `Oh I know, it's ${game.target}!`
    : `Time's up: I couldn't guess ${game.target}${top ? ` (I thought ${top.dataset.class})` : ""}.`;
  gameClock.textContent = "";
}

function stopGame() {
  if (state.game) clearInterval(state.game.timer);
  state.game = null;
}

function checkGame(topClass) {
  const game = state.game;
  if (game && !game.over && topClass === game.target) endGame(true);
}

document.getElementById("play").addEventListener("click", startGame);

// ---------------------------------------------------------------------------------- model facts

async function loadFacts() {
  const facts = document.getElementById("facts");
  try {
    const response = await fetch("model");
    const model = await response.json();
    state.classes = model.classes;
    const pct = (v) => (v === null || v === undefined ? null : `${(100 * v).toFixed(1)}%`);
    const parts = [`${model.model_name || "model"} · ${model.classes.length} classes`];
    if (pct(model.val_accuracy)) parts.push(`validation accuracy ${pct(model.val_accuracy)}`);
    if (pct(model.test_accuracy)) parts.push(`test accuracy ${pct(model.test_accuracy)}`);
    if (model.run_name) parts.push(`run ${model.run_name}`);
    if (model.quantized) parts.push("int8");
    facts.textContent = parts.join(" · ");
    facts.dataset.classes = String(model.classes.length);
    document.getElementById("classes").textContent = model.classes.join(", ");
  } catch (error) {
    facts.textContent = `could not load the model facts (${error.message})`;
  }
}

window.addEventListener("resize", resizePad);
resizePad();
loadFacts();
