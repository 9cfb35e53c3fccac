"""indexes for planning at scale

The offers' booking_id index repeats the leading column of their unique key (booking, disruption, revision,
option), which serves every lookup by booking; the notifications' provider_id index becomes partial (only sent
notices have a provider id), so the 100,000 notices a typhoon plans go in without touching it; the bookings'
(sailing, status) index also covers kind and accessibility needs, so planning reads a sailing's bookings from
the index alone.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

SENT = sa.text("provider_id IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table('bookings', schema=None) as batch_op:
        batch_op.drop_index('ix_bookings_sailing_status')
        batch_op.create_index('ix_bookings_sailing_status', ['sailing_id', 'status', 'kind', 'accessibility_needs'],
                              unique=False)
    with op.batch_alter_table('offers', schema=None) as batch_op:
        batch_op.drop_index('ix_offers_booking_id')
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index('ix_notifications_provider_id')
        batch_op.create_index('ix_notifications_provider_id', ['provider_id'], unique=False,
                              sqlite_where=SENT, postgresql_where=SENT)


def downgrade() -> None:
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index('ix_notifications_provider_id')
        batch_op.create_index('ix_notifications_provider_id', ['provider_id'], unique=False)
    with op.batch_alter_table('offers', schema=None) as batch_op:
        batch_op.create_index('ix_offers_booking_id', ['booking_id'], unique=False)
    with op.batch_alter_table('bookings', schema=None) as batch_op:
        batch_op.drop_index('ix_bookings_sailing_status')
        batch_op.create_index('ix_bookings_sailing_status', ['sailing_id', 'status'], unique=False)
