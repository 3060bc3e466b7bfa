"""The built-in backend's child process: diffusers + peft LoRA training that writes sd-scripts' files."""
