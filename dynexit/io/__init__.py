"""Reading and writing dynexit's files: checkpoints (safetensors weights + a JSON sidecar)."""
