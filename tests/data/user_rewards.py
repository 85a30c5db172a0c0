"""Reward functions for tests/test_rewards_custom.py: loaded by path (tests/data/user_rewards.py:<name>) or as the
module ``user_rewards`` (with tests/data on the import path). Small, deterministic, and some broken on purpose."""

import time

not_callable = 3


def exact_match(response, ground_truth):
    """1.0 when the stripped response equals the ground truth."""
    return float(response.strip() == str(ground_truth).strip())


def brevity(response, ground_truth, max_chars=10):
    """A dict: ``overall`` = 1 - len / max_chars (floored at 0), plus the length as a named score."""
    return {"overall": max(0.0, 1.0 - len(response) / max_chars), "chars": float(len(response))}


def graded(response, ground_truth):
    """A dict with accuracy and format entries (they feed the run's accuracy / format)."""
    acc = float(response == ground_truth)
    return {"overall": 0.5 * acc, "accuracy": acc, "format": 0.25}


def sees_row(response, ground_truth, question, uid, task_type="?"):
    """The row fields arrive by name: overall = the uid as a number; the question's length and the task."""
    return {
        "overall": float(uid),
        "question_chars": float(len(question)),
        "is_count": float(task_type == "count"),
    }


def sees_everything(response, ground_truth, **fields):
    """``**fields`` takes every row field: their number (images only when the config passes them)."""
    return {"overall": float(len(fields)), "has_images": float("images" in fields)}


def image_pixels(response, ground_truth, images):
    """Needs the images: the total pixel count of the row's images."""
    return float(sum(im.size[0] * im.size[1] for im in images))


def scaled(response, ground_truth, factor):
    """A config kwarg: overall = factor."""
    return float(factor)


def sleeps(response, ground_truth):
    """Runs past any test deadline."""
    time.sleep(60)
    return 1.0


def raises(response, ground_truth):
    raise ValueError("reward service down")


def returns_text(response, ground_truth):
    return "high"


def returns_no_overall(response, ground_truth):
    return {"score": 1.0}


def returns_nan(response, ground_truth):
    return float("nan")


def one_arg(response):
    return 1.0


def needs_level(response, ground_truth, level):
    return float(level)
