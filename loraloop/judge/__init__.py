"""Judging replies: the rules, scores, evaluation, gates, A/B sets, leakage, reports and charts."""
