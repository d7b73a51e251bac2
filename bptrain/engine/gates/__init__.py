"""The gate library. Every gate is a `Gate` subclass with forward and backward side by side;
importing this package registers every class (see bptrain.engine.gate.registry)."""
from bptrain.engine.gates.activations import ELU, Dropout, LeakyReLU, ReLU, Sigmoid, Tanh
from bptrain.engine.gates.conv import AvgPool2D, Conv2D, Flatten, MaxPool2D
from bptrain.engine.gates.arithmetic import (Abs, Add, Divide, Exp, Log, Maximum, Mean, Minimum,
                                             Multiply, Negate, Power, Subtract, Sum)
from bptrain.engine.gates.linalg import Affine, BiasAdd, MatMul
from bptrain.engine.gates.merge import Concat
from bptrain.engine.gates.losses import MSE, SoftmaxCrossEntropy, SVMHinge
from bptrain.engine.gates.normalization import BatchNorm, GroupNorm, LayerNorm, SpatialBatchNorm
from bptrain.engine.gates.regularizers import L1, L2

__all__ = ["Abs", "Add", "Affine", "AvgPool2D", "Conv2D", "Flatten", "MaxPool2D", "BatchNorm", "BiasAdd", "Concat", "Divide", "Dropout", "ELU", "Exp",
           "GroupNorm", "L1", "L2", "LayerNorm", "LeakyReLU", "Log", "SpatialBatchNorm", "MSE", "MatMul", "Maximum", "Mean", "Minimum", "Multiply",
           "Negate", "Power", "ReLU", "SVMHinge", "Sigmoid", "SoftmaxCrossEntropy", "Subtract",
           "Sum", "Tanh"]
