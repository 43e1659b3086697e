"""Generated gRPC/protobuf code for the director service (see fedloom.proto)."""
