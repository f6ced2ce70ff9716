"""Input data: calibration sets (images or arrays) and their preprocessing."""
