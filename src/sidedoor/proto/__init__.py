"""Sans-I/O protocol machines: bytes and events in, bytes and events out.

Nothing in this package touches sockets, clocks, threads, files or randomness;
the current time and any random bytes are passed in as arguments.
"""
