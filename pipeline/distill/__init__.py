"""Stage two: train the STEP student from cached teacher features (no teacher is ever loaded here)."""
