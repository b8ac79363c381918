"""The app's pages: each file is a Streamlit page script that ``st.navigation`` runs (never imported)."""
