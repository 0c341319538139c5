"""gRPC servicers: translation between the wire and the daemon's parts, nothing more."""
