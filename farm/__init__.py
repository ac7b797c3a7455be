"""zapfarm's control plane: parameters, scheduling, recording, triage and the web."""
