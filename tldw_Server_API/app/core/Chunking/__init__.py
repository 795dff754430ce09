"""Host chunking (words, sentences, paragraphs, tokens; size + overlap; char offsets). Not built yet."""
