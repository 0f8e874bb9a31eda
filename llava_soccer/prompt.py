"""The question every model family is asked about a window, and how a frame's time is written: the same
text for every family, so their answers compare. How it is put into a model's own prompt format, with
the images, is the family's (llava_soccer/families/: build_prompt, prepare, collate).
"""
from .settings import SOCCERNET_CLASSES

QUESTION = (
    "These are {n} consecutive frames of a soccer match broadcast, {gap:g} seconds apart, numbered "
    "Frame 1 to Frame {n} with their time in the video. Which of these events happen in them: "
    + ", ".join(SOCCERNET_CLASSES) + "? "
    "For each event write one Python dict: {{'label': one of the event names above, 'team': 'home' or "
    "'away', 'confidence': a number from 0 to 1, 'frame': the number of the frame where it happens, "
    "'details': a few words}}. Answer with the dicts only, or None if none of these events happens."
)


def clock(t: float) -> str:
    return f"{int(t // 60)}:{t % 60:04.1f}"
