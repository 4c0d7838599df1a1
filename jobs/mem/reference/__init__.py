"""The reference implementation (huzeyann/MemoryEncodingModel) as a source of trained weights:
reading its checkpoint files without running them, converting its tensor names and rows to a
MemModel's, and the kind ``mem.import`` that registers a reference run's checkpoints as a job's."""
