"""What everything else reads: the experiment schema and YAML layering, the task registry, the model card."""
