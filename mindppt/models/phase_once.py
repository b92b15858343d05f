"""A Cell base for whole models: a call skips MindSpore's walk over the sub-cells when nothing changed.

In GRAPH_MODE, MindSpore 2.10 runs ``Cell.compile`` on every call, also when the graph is cached, and
that assigns the graph's phase to ``compile_phase`` on every sub-cell, recursively: PPT DeiT-S has 393
cells, and the walk took about 2 ms of each call (6% of a batch-1 forward). MindSpore reads the phase from
the cell it compiles, and the phase changes only with the graph (other input shapes, train or eval, another
network around the model), so a cell that already holds the new value leaves the cells below it as they are.
Only model classes derive from it: a wrapper that skipped its walk could leave the model below it holding
the phase of another graph that was compiled for the model in between.
"""
from mindspore import nn


class PhaseOnceCell(nn.Cell):
    """``nn.Cell`` whose ``compile_phase`` assignment returns at once when the value is unchanged."""

    @property
    def compile_phase(self):
        return nn.Cell.compile_phase.fget(self)

    @compile_phase.setter
    def compile_phase(self, value):
        if value is not None and value == nn.Cell.compile_phase.fget(self):
            return
        nn.Cell.compile_phase.fset(self, value)
