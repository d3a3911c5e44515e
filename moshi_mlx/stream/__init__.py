"""The stream: one frame's step, the pipelined frame loop, file mode, the live engine and its devices, echo."""
