DROP TABLE kb_forget_terms;
DROP TABLE kb_forget;
DROP TABLE kb_chunks;
DROP TABLE kb_document_subjects;
DROP TABLE kb_documents;
