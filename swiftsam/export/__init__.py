"""Exported graphs: ONNX (encoder, batched decoder, SAM's decoder interface) and TensorRT engines."""

from .onnx import BANNED_OPS, OPSET, SamOnnxDecoder, banned_ops, check_graph, export_onnx, read_manifest

__all__ = ["BANNED_OPS", "OPSET", "SamOnnxDecoder", "banned_ops", "check_graph", "export_onnx", "read_manifest"]
