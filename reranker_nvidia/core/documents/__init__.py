"""What is reranked: passages (text, images), the images themselves, and Weaviate hits."""
