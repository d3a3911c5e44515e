"""Echo cancellation: Moshi's own voice taken out of the microphone, and a simulated echo path to check it.

- `canceller`: `EchoCanceller` (the reference queue, the hold-back applied, the headphone bypass, the echo reduction
  figure), `CleanedMicrophone` (device blocks -> cleaned 24 kHz frames) and `make_echo_canceller`.
- `aec3`: `Aec3`, WebRTC's AEC3 through livekit, fed 10 ms sub-frames of reference and microphone.
- `lead`: `LeadEstimator`, how far the reference leads its echo (stream time info, GCC-PHAT cross-correlation),
  the hold-back that keeps it in AEC3's range, and whether the microphone hears Moshi at all.
- `simulator`: Moshi's voice echoed into its own input for `run --simulate-echo`, synthetic speech and rooms.
"""
