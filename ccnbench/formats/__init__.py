"""The ONNX files ccnbench writes and reads: export of a module, what a file is and its checks,
file names, and saved reference outputs (Polygraphy JSON or .npz)."""
