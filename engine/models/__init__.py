"""Model definitions and loading: ``ModelConfig`` (config.json, normalised), the Llama-family
decoder (Llama, Mistral, Qwen2, Qwen3), the safetensors loader and a step's forward inputs."""
