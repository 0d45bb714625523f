"""Deployment on devices: GPU figures, memory budget, capacity, latency, cost and CI gates."""
