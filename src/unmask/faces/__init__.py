"""Face detection: ``unmask.faces.mtcnn.MTCNN`` (imported from there, so that importing this package stays cheap)."""
