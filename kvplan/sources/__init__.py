"""Where a model comes from: the shipped catalog, config.json, GGUF and safetensors headers."""
