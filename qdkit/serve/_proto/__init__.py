"""Generated gRPC code of the Open Inference Protocol (scripts/gen_grpc_proto.py); do not edit."""
