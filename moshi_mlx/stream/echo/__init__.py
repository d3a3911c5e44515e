"""Echo cancellation: Moshi's own voice taken out of the microphone, and a simulated echo path to check it."""
