"""mmcl-bench: a benchmark harness for multimodal continual learning."""
