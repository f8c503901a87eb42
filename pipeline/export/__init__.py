"""Export a trained model: a merged Hugging Face folder, or a GGUF for llama.cpp and Ollama."""
