"""gluon-tricks: the Bag of Tricks and its CIFAR-100 follow-up as small composable pieces.

Data flows one way: recipe -> data + model + tricks -> engine -> run directory
-> tables and plots.
"""
__version__ = "0.1.0"
