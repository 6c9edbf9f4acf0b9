"""Models and data the project builds or ships: Countdown / GSM8K / MATH data (data), the embedded default model
(embedded) and the tiny offline test model (tiny_model)."""
