"""ONNX symbolics the TorchScript-based exporter lacks for our models, registered only while exporting."""
import torch

__all__ = ["adaptive_pool_as_matmul"]


class adaptive_pool_as_matmul:
    """While exporting: ``adaptive_avg_pool2d`` as two matrix products with averaging matrices built in the graph.

    The TorchScript-based exporter turns adaptive pooling into an AvgPool only when the output size divides the input
    size; UPerNet's pyramid pooling (1, 2, 3, 6 bins) on a small stride-32 map rarely does. Bin ``i`` of ``n`` over
    ``L`` positions averages ``[floor(i L / n), ceil((i + 1) L / n))``, PyTorch's rule, so the result is the same.
    ``L`` is read from the input's shape in the graph (constant-folded when the shape is static)."""

    def __init__(self, opset):
        self.opset = opset

    @staticmethod
    def _averaging_matrix(g, x, axis, bins):
        """(bins, L) float matrix of the ``axis`` of ``x`` (L = its length)."""
        def const(values):
            return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

        length = g.op("Gather", g.op("Shape", x), const(axis), axis_i=0)  # 0-d int64
        i = const(list(range(bins)))
        start = g.op("Div", g.op("Mul", i, length), const(bins))  # non-negative: integer division is floor
        stop = g.op("Mul", const(list(range(1, bins + 1))), length)
        end = g.op("Div", g.op("Add", stop, const(bins - 1)), const(bins))  # ceil
        pos = g.op("Range", const(0), length, const(1))  # (L,)
        start, end = (g.op("Unsqueeze", t, const([1])) for t in (start, end))  # (bins, 1)
        inside = g.op("And", g.op("GreaterOrEqual", pos, start), g.op("Less", pos, end))  # (bins, L)
        count = g.op("Cast", g.op("Sub", end, start), to_i=1)  # 1 = FLOAT
        return g.op("Div", g.op("Cast", inside, to_i=1), count)

    @classmethod
    def symbolic(cls, g, x, output_size):
        from torch.onnx import symbolic_helper as sh

        bins = sh._maybe_get_const(output_size, "is")
        if not isinstance(bins, (list, tuple)) or len(bins) != 2 or any(not isinstance(b, int) for b in bins):
            raise RuntimeError(f"adaptive_avg_pool2d: the output size must be two constant ints to export, got {bins}")
        rows = cls._averaging_matrix(g, x, -2, bins[0])  # (bh, H)
        cols = g.op("Transpose", cls._averaging_matrix(g, x, -1, bins[1]), perm_i=[1, 0])  # (W, bw)
        return g.op("MatMul", g.op("MatMul", rows, x), cols)

    def __enter__(self):
        torch.onnx.register_custom_op_symbolic("aten::adaptive_avg_pool2d", self.symbolic, self.opset)

    def __exit__(self, *exc):
        torch.onnx.unregister_custom_op_symbolic("aten::adaptive_avg_pool2d", self.opset)
        return False
