"""The evaluator: watches trial folders, scores each complete checkpoint, reports to files."""
