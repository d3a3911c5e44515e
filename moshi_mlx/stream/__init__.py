"""The stream: Moshi run frame by frame, over a file or live on sound devices.

`pipeline` holds one 80 ms frame's step (Mimi encode, the LM step, Mimi decode; `Pipeline`, `FrameEvent`);
`frame_loop` the pipelined loop that overlaps those three stages over consecutive frames (`run_frame_loop`);
`outputs` where each processed frame goes (recording, transcript, events; `FrameOutputs`) and the padding of audio
to whole frames; `filemode` Moshi over a recording (`run_file`, `run_frames`); `engine` the live conversation and
its frame's whole walk, microphone to speaker (`Engine`); `devices` the sound devices under it (PortAudio's
callbacks, the queues, `EngineStats`); `audio_io` devices found and opened, files read, resampling; `recording` the
WAV and transcript writers; `echo/` echo cancellation and a simulated echo path to check it.
"""
