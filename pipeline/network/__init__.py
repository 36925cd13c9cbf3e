"""The network: the valid-convolution U-Net, its checkpoint file, its loss, blockwise prediction
(batched and streamed to a GPU) and bioimage.io packages."""
