"""Neuron Atlas dashboard: Streamlit pages over the neuron warehouse (``streamlit run dashboard/app.py``)."""
