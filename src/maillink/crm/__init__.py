"""CRM adapters behind one small interface (`maillink.crm.base.CRM`)."""
