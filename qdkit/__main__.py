"""`python -m qdkit ...` and `torchrun -m qdkit train ...`."""

from qdkit.cli import main

if __name__ == "__main__":
    main()
