"""Each trick of both papers: a pure function first, an MXNet wrapper where one is needed."""
