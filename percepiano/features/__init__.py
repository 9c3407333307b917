"""Pure-Python feature extraction: MusicXML score + performance MIDI -> the 101-dim PercePiano model input."""
