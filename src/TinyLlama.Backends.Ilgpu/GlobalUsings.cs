// System.Numerics.Tensors also defines a Tensor type; inside this library "Tensor" is always ours.
global using Tensor = TinyLlama.Tensors.Tensor;
// ILGPU.Runtime also defines a Device type (an accelerator description); "Device" is always ours.
global using Device = TinyLlama.Tensors.Device;
