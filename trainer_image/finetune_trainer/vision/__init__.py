"""Task image-classification: transfer learning of a vision backbone with a new head.

``images``: the image-folder and image-manifest readers (every image opened once,
bad files named with their path); ``transforms``: random resized crop and flip for
training, resize and center crop for evaluation, normalised as the model's image
processor says; ``examples``: an image as an example of the loop, and a micro-batch of
them as ``pixel_values``; ``prepare``: the run's train and validation sets;
``recipe``: the run (new head, its learning rate, the method, the loop, the scores).
"""
