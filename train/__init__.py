"""Training: one resumable loop (loop), its batches (batches) and losses (losses), and the proxy
teacher trained from scratch with it (proxy). Sits above models, below export and compress."""
