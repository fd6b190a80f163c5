"""Generated from remoting/proto by remoting/tools/generate_proto.py."""
