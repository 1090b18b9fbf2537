"""Evaluation: confusion-matrix metrics (mIoU(S), mIoU(U), hIoU), sliding-window inference."""
