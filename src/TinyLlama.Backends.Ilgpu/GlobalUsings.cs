// System.Numerics.Tensors also defines a Tensor type; inside this library "Tensor" is always ours.
global using Tensor = TinyLlama.Tensors.Tensor;
