"""Full-catalog ranking evaluation."""
