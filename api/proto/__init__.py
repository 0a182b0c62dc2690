"""The gRPC contract (moray.proto) and the code generated from it."""
