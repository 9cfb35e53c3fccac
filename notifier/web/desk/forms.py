"""The desk's forms, checked before anything is written. The CSRF token is checked for every POST under /desk by
CSRFProtect (notifier.web.desk.blueprint), so these forms do not carry their own."""

from __future__ import annotations

from wtforms import Form, IntegerField, PasswordField, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional

from notifier.aftercare.followups import NOTE_LIMIT, OUTCOMES
from notifier.aftercare.tickets import CATEGORIES, TEXT_LIMIT
from notifier.web.desk.words import CALL_OUTCOMES


class SignInForm(Form):
    """An agent's name and password."""

    name = StringField(validators=[DataRequired(), Length(max=120)])
    password = PasswordField(validators=[DataRequired(), Length(max=200)])


class ChoiceForm(Form):
    """A decision the customer gave on the phone: one option of one disruption's offers."""

    disruption_id = IntegerField(validators=[DataRequired()])
    option = StringField(validators=[DataRequired(), Length(max=4)])


class CallForm(Form):
    """A call an agent made or took."""

    booking_id = IntegerField(validators=[Optional()])
    outcome = SelectField(choices=CALL_OUTCOMES)
    note = TextAreaField(validators=[Length(max=NOTE_LIMIT)])


class ReplyForm(Form):
    """An agent's answer to a ticket."""

    text = TextAreaField(validators=[DataRequired(), Length(max=TEXT_LIMIT)])


class ResolveForm(Form):
    """How a ticket was resolved."""

    note = TextAreaField(validators=[DataRequired(), Length(max=TEXT_LIMIT)])


class CategoryForm(Form):
    """The agent's correction of a ticket's category."""

    category = SelectField(choices=CATEGORIES)


class CloseFollowUpForm(Form):
    """A follow-up's outcome and what was done."""

    outcome = SelectField(choices=OUTCOMES)
    note = TextAreaField(validators=[DataRequired(), Length(max=NOTE_LIMIT)])
