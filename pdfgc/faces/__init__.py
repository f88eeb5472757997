"""Faces in real videos: 68-point landmarks, alignment to the release's template, head pose
from landmarks and eye measurements (aspect ratio, iris position).

Used by preprocessing (``pdfgc.preprocessing``) and by the evaluation metrics (gaze, blink,
pose). All functions take numpy arrays; landmarks are ``(..., 68, 2)`` float32 pixel (x, y) in
iBUG-68 order with NaN rows where no face was found.
"""

from pdfgc.faces.align import ALIGN_TEMPLATE_224, clip_alignment, warp_frames
from pdfgc.faces.eyes import eye_aspect_ratio, iris_positions
from pdfgc.faces.landmarks import FaceDetections, LandmarkDetector, build_landmark_detector
from pdfgc.faces.pose import head_pose
from pdfgc.faces.pose_backends import PoseEstimator, build_pose_estimator

__all__ = [
    "ALIGN_TEMPLATE_224", "clip_alignment", "warp_frames", "eye_aspect_ratio", "iris_positions",
    "FaceDetections", "LandmarkDetector", "build_landmark_detector", "head_pose", "PoseEstimator",
    "build_pose_estimator",
]
