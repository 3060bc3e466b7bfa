"""Running kohya-ss sd-scripts' train_network.py as a child process: never imported, never copied."""
